package dep
import (
	_ "github.com/FerretDB/FerretDB/ferretdb"
	_ "go.mongodb.org/mongo-driver/v2/mongo"
	_ "github.com/rabbitmq/amqp091-go"
	_ "github.com/redis/go-redis/v9"
	_ "github.com/sony/gobreaker/v2"
	_ "golang.org/x/time/rate"
	_ "github.com/aws/aws-lambda-go/lambda"
	_ "github.com/awslabs/aws-lambda-go-api-proxy/httpadapter"
	_ "github.com/google/uuid"
)

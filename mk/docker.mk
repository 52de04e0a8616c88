# The system in containers (local/compose.yaml): a real MongoDB, RabbitMQ,
# Redis and one container per role, all built from the repository's
# Dockerfile. Needs Docker with the compose plugin (`docker compose`).

COMPOSE ?= docker compose -f local/compose.yaml

.PHONY: docker-build docker-run docker-infra docker-stop logs seed

docker-build: ## build the container image (rms:local) with docker compose
	$(COMPOSE) build

docker-run: ## start the whole system in containers (docker compose up -d --build)
	$(COMPOSE) up -d --build
	@echo
	@echo "  API                  http://127.0.0.1:8080   (GET /status, POST /messages)"
	@echo "  processor status     http://127.0.0.1:8081/status"
	@echo "  publisher status     http://127.0.0.1:8082/status"
	@echo "  demo webhook         http://127.0.0.1:8090/webhook"
	@echo "  RabbitMQ management  http://127.0.0.1:15672  (guest/guest)"
	@echo
	@echo "  make seed (sample messages), make logs, make docker-stop"

docker-infra: ## start only MongoDB, RabbitMQ and Redis in containers, on 127.0.0.1:27017, 5672 and 6379, for make run
	$(COMPOSE) -f local/compose.infra.yaml up -d mongodb rabbitmq redis
	@echo
	@echo "  then: MONGODB_URI=mongodb://127.0.0.1:27017 make run"

docker-stop: ## stop and remove the containers (data volumes stay)
	$(COMPOSE) down

logs: ## follow the containers' logs
	$(COMPOSE) logs -f

seed: ## post sample messages to a running API (API_URL, API_KEY)
	@bash scripts/seed.sh

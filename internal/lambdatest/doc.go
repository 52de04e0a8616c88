// Package lambdatest tests the three Lambda functions as AWS runs them: the
// real bootstraps, built the way mk/lambda.mk builds them (for this machine's
// architecture), run under the AWS Lambda Runtime Interface Emulator and fed
// the event fixtures of events/, against the local RabbitMQ and Redis and the
// tests' embedded MongoDB. The package has only tests.
package lambdatest

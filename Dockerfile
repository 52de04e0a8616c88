# syntax=docker/dockerfile:1

# The local binary (bin/rms) in a small image: one image, every role. The
# compose stack (local/compose.yaml) runs each role as its own container;
# `docker run` with no arguments runs them all in one process with the
# embedded MongoDB under /data.
#
#   docker build -t rms:local .
#   docker run --rm -p 127.0.0.1:8080:8080 --add-host=host.docker.internal:host-gateway \
#     -v rms-data:/data --stop-timeout 40 \
#     -e RABBITMQ_URI=amqp://rms:<password>@host.docker.internal:5672/ \
#     -e REDIS_URI=host.docker.internal:6379 rms:local
#
# The volume keeps the embedded MongoDB, and with it every message accepted
# but not yet delivered, beyond the container; a stop may take up to about
# 35 s (requests and deliveries in flight finish and are recorded, then the
# embedded MongoDB closes), more than docker stop's default 10 s before it
# kills; compose gives it 40 s too.
#
# RabbitMQ's guest user may only connect from loopback, which a container is
# not: give the broker a user of its own (rabbitmqctl add_user, then
# set_permissions), and let RabbitMQ and Redis listen beyond 127.0.0.1.

# The build runs on the builder's own platform and cross-compiles, which is
# fast and needs no emulation: the binary is pure Go (FerretDB's SQLite
# included), so CGO stays off.
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -tags ferretdb_no_postgresql -trimpath -ldflags "-s -w" -o /out/rms ./local
# The runtime image has no shell, so the data directory is made here.
RUN mkdir -p /out/data

# distroless/static ships the CA certificates (ca-certificates, at
# /etc/ssl/certs/ca-certificates.crt), so TLS to the webhook, Atlas or Amazon
# MQ stays verified; it has no shell and no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="rms" \
      org.opencontainers.image.description="Reliable message processing: REST API, outbox publisher, processor" \
      org.opencontainers.image.source="https://github.com/Furkan-Gulsen/reliable_messaging_system"
COPY --from=build /out/rms /rms
# 65532 is distroless's "nonroot" user; numeric, so that runAsNonRoot checks
# can verify it.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
# In a container the listeners must not be on loopback, and the embedded
# MongoDB (used only while MONGODB_URI is empty) keeps its files in /data.
ENV DATA_DIR=/data \
    API_ADDR=0.0.0.0:8080 \
    PROCESSOR_ADDR=0.0.0.0:8081 \
    PUBLISHER_ADDR=0.0.0.0:8082 \
    RECEIVER_ADDR=0.0.0.0:8090 \
    LOG_FORMAT=json
EXPOSE 8080 8081 8082 8090
ENTRYPOINT ["/rms"]
CMD ["all"]

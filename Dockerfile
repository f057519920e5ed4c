# syntax=docker/dockerfile:1
#
# walbust as a static binary on distroless, running as a non-root user.
#   docker build -t walbust --build-arg VERSION="$(git describe --tags --always --dirty)" .
# See docker-compose.yml for a complete stack (Postgres with wal_level=logical, Redis, walbust).

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/walbust ./cmd/walbust \
 && mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot
# The checkpoint lives in /var/lib/walbust (mount a volume there so it
# survives container replacement). 65532 is distroless's "nonroot" user.
COPY --from=build --chown=65532:65532 /out/state /var/lib/walbust
COPY --from=build /out/walbust /usr/local/bin/walbust
USER 65532:65532
VOLUME ["/var/lib/walbust"]
ENTRYPOINT ["/usr/local/bin/walbust"]
CMD ["run", "--config", "/etc/walbust/walbust.yaml"]

# loupe-aggregator image. Build from the repository root:
#   docker build -f deploy/docker/aggregator.Dockerfile -t loupe-aggregator .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/loupe-aggregator ./aggregator/cmd/loupe-aggregator

# A static binary on a distroless base, as an unprivileged user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/loupe-aggregator /usr/local/bin/loupe-aggregator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/loupe-aggregator"]

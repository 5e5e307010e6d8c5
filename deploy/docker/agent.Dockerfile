# loupe-agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t loupe-agent .
# cgo is on because go-nvml and go-dcgm dlopen the NVIDIA libraries at run
# time; the NVIDIA container toolkit mounts them into the container.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags "-s -w" -o /out/loupe-agent ./agent/cmd/loupe-agent

# The agent needs root with a few capabilities (see the DaemonSet); it runs
# with a read-only root file system.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/loupe-agent /usr/local/bin/loupe-agent
EXPOSE 9400
ENTRYPOINT ["/usr/local/bin/loupe-agent"]

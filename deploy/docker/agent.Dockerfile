# loupe-agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t loupe-agent .
# cgo is on because go-nvml and go-dcgm dlopen the NVIDIA libraries at run
# time: the NVIDIA container runtime mounts the driver's (libnvidia-ml) into
# the container; libdcgm comes from NVIDIA's DCGM packages below.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags "-s -w" -o /out/loupe-agent ./agent/cmd/loupe-agent

# The agent needs root with a few capabilities (see the DaemonSet); it runs
# with a read-only root file system.
FROM debian:bookworm-slim
# DCGM 4 from NVIDIA's CUDA repository: -core is libdcgm.so.4 (embedded host
# engine), -proprietary the profiling module behind fields 1001-1012. Set
# gpu.dcgm.mode: standalone to use the node's nv-hostengine instead.
ARG DCGM_VERSION=4.5.2-1
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    case "$(dpkg --print-architecture)" in amd64) repo=x86_64 ;; arm64) repo=sbsa ;; *) echo "unsupported architecture" >&2; exit 1 ;; esac; \
    curl -fsSLo /tmp/cuda-keyring.deb "https://developer.download.nvidia.com/compute/cuda/repos/debian12/${repo}/cuda-keyring_1.1-1_all.deb"; \
    dpkg -i /tmp/cuda-keyring.deb; rm /tmp/cuda-keyring.deb; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
        "datacenter-gpu-manager-4-core=1:${DCGM_VERSION}" "datacenter-gpu-manager-4-proprietary=1:${DCGM_VERSION}"; \
    apt-get purge -y --autoremove curl; \
    rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man
# What the NVIDIA container toolkit mounts: every GPU of the node, with the
# driver's NVML (utility) and compute libraries (DCGM profiling).
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build /out/loupe-agent /usr/local/bin/loupe-agent
EXPOSE 9400
ENTRYPOINT ["/usr/local/bin/loupe-agent"]

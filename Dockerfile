# Multi-stage: build socklb (the eBPF object is built by agent/build.rs with
# nightly and bpf-linker, exactly as scripts/setup.sh installs them), then a
# slim runtime image with the binary alone.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/setup.sh && cargo build --release -p socklb --bins

FROM debian:bookworm-slim
# mount(8) for the init container that mounts bpffs.
RUN apt-get update && apt-get install -y --no-install-recommends mount ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/socklb /usr/local/bin/socklb
ENTRYPOINT ["/usr/local/bin/socklb"]

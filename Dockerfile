# Multi-stage: build socklb (the eBPF object is built by crates/bpf/build.rs with
# nightly and bpf-linker, exactly as scripts/setup.sh installs them), then a
# slim runtime image with the binary alone.
#
#   docker build -t <registry>/socklb:<tag> .
#
# The build stage needs network access to static.rust-lang.org (nightly and
# rust-src), crates.io and Debian's mirrors; it takes 10-15 minutes on two
# cores (bpf-linker is built from source against nightly's LLVM).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/setup.sh && cargo build --release -p socklb --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/socklb /usr/local/bin/socklb
ENTRYPOINT ["/usr/local/bin/socklb"]

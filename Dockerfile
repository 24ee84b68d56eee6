# syntax=docker/dockerfile:1
#
# The storyline image: `storyline serve` on 0.0.0.0:8080 as a non-root user, healthy when GET /readyz answers 200.
# Built by the compose stack (docker-compose.yml); on its own: `docker build -t storyline .`.
#
# Checked without a Docker engine by scripts/compose-check.sh: the stages, the paths it copies, the binary's name,
# the port and the health check against the repository.

# --- build: the release binary, exactly as Cargo.lock pins it -------------------------------------------------
# Debian 12 (bookworm), as the runtime stage: the binary links against this glibc.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Everything .dockerignore lets in: the crates and, for the reader page the binary embeds (include_str! in
# crates/storyline-server/src/routes/reader.rs), clients/js/src and clients/js/reader.
COPY . .
# The registry and the target directory are BuildKit cache mounts: a rebuild after a source change recompiles
# storyline's crates, not its ~400 dependencies, and none of it lands in a layer. The binary is copied out of the
# cached target directory, which later stages cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin storyline \
    && install -D -m 0755 target/release/storyline /out/storyline

# --- runtime ------------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: the system roots, which storyline's JWKS fetch (STORYLINE_JWKS_URL, https) verifies against.
# busybox: its `wget` is the health check's HTTP client (about 0.8 MB, libc only). storyline has no
# health-check subcommand (`storyline probe` needs a token and checks much more than readiness), and curl would
# bring libcurl and a dozen libraries.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates busybox \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin storyline
COPY --from=build /out/storyline /usr/local/bin/storyline
USER 10001:10001
# Every interface inside the container; the port is the one EXPOSEd and health-checked below.
ENV STORYLINE_LISTEN=0.0.0.0:8080
EXPOSE 8080
# 200 once the broker answers and the instance is not draining; 503 otherwise, which busybox wget turns into a
# non-zero exit. --timeout bounds it, not wget's -T: bookworm's busybox 1.35 wget crashes (SIGSEGV) with -T, on
# every request. (If STORYLINE_IP_ALLOW is set, it must admit 127.0.0.1.)
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/readyz"]
# SIGTERM drains (STORYLINE_DRAIN_WINDOW_SECS, then STORYLINE_SHUTDOWN_GRACE_SECS): give the container more than
# their sum before it is killed (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["storyline"]
CMD ["serve"]

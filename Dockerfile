# relay in a container: a slim Debian with Debian's Python 3.11, relay in a virtual
# environment at /opt/relay, running as the unprivileged user `relay` (uid 10001).
# Everything relay writes (the SQLite database, the secret key, CSV outputs) and the
# recipes live on the volume /data; the rest of the filesystem is root's, read-only
# to relay. The README's "Run it with Docker" says how to use it.
#
#   docker build -t relay .
#   docker run -d --name relay -p 8000:8000 -v relay-data:/data relay
#
# Behind a proxy that re-signs TLS, give pip the proxy's CA certificate:
#   docker build --build-arg PIP_CERT=/run/host-ca.crt \
#                -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro -t relay .   (podman)

FROM docker.io/library/debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log


# --- build: the virtual environment, with relay installed (not editable) -----------
FROM base AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv /opt/relay
# The dependencies first, from pyproject.toml alone: this layer stays cached while
# only relay's own code changes.
COPY pyproject.toml /src/pyproject.toml
RUN [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/relay/bin/pip install --upgrade pip setuptools wheel \
 && /opt/relay/bin/pip install -r /tmp/requirements.txt
COPY . /src
RUN [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    /opt/relay/bin/pip install --no-deps /src \
 && /opt/relay/bin/pip check \
 && /opt/relay/bin/relay --version


# --- the image ---------------------------------------------------------------------
FROM base
# Only /data (and /tmp) are writable by relay: not /var/tmp or /run/lock either.
RUN groupadd --system --gid 10001 relay \
 && useradd --system --uid 10001 --gid relay --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin relay \
 && mkdir -p /data \
 && chown relay:relay /data \
 && chmod 0750 /data \
 && chmod 0755 /var/tmp /run/lock

# Root's files, read-only to relay: the virtual environment and the example recipes.
COPY --from=build /opt/relay /opt/relay
COPY recipes /opt/relay/share/recipes

# On the first start, the volume has no recipes folder yet: give it the examples to
# edit. Then run the command (relay serve) in place of this script, as PID 1, so
# SIGTERM reaches relay itself. `docker run IMAGE check` means `relay check`, and
# `docker run IMAGE --port 9000` means `relay serve --port 9000`.
RUN printf '%s\n' \
      '#!/bin/sh' \
      'set -e' \
      'case "${1:-}" in' \
      '    "") set -- relay serve ;;' \
      '    -*) set -- relay serve "$@" ;;' \
      '    *) command -v "$1" >/dev/null 2>&1 || set -- relay "$@" ;;' \
      'esac' \
      'recipes="${RELAY_RECIPES:-/data/recipes}"' \
      'if [ ! -e "$recipes" ]; then' \
      '    if ! cp -R /opt/relay/share/recipes "$recipes"; then' \
      '        echo "relay: cannot write the example recipes to $recipes: the data volume must be writable by uid $(id -u) (chown $(id -u) on the host folder)" >&2' \
      '        exit 1' \
      '    fi' \
      '    echo "relay: copied the example recipes to $recipes" >&2' \
      'fi' \
      'exec "$@"' \
      > /usr/local/bin/relay-entrypoint \
 && chmod 0755 /usr/local/bin/relay-entrypoint

ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8000 \
    RELAY_DATA=/data \
    RELAY_DB=/data/relay.db \
    RELAY_RECIPES=/data/recipes

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/relay/bin/python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ.get('RELAY_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/local/bin/relay-entrypoint"]
CMD ["relay", "serve"]

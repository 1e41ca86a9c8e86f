# The kit in a container: PM2 in the foreground (pm2-runtime), the same
# ecosystem file and preload as on a host. One container is one PM2 cluster of
# WEB_CONCURRENCY workers; scale out by running more containers.
#
#   docker build -t koa-otel-app .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 koa-otel-app
#
# Behind a private registry or a TLS-intercepting proxy, give npm its
# configuration (and the CA file it names) as build secrets: they are mounted
# for the `npm ci` step only and never stored in a layer.
#
#   docker build --secret id=npmrc,src=$HOME/.npmrc --secret id=npm_ca,src=/path/ca.pem -t koa-otel-app .
#   (with `cafile=/run/secrets/npm_ca` in that npmrc)
#
# `docker stop` sends SIGTERM to pm2-runtime, which stops the workers with
# SIGINT: each drains, flushes its spans and exits well within Docker's 10 s.
# test/e2e/container.test.ts builds this file with podman and runs the image.

# Any Node 24 image with npm and a `node` user (uid 1000); the test builds a
# local stand-in when no registry is reachable.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=npmrc,target=/root/.npmrc \
    --mount=type=secret,id=npm_ca,target=/run/secrets/npm_ca \
    npm ci --no-audit --no-fund --no-update-notifier
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY otel ./otel
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE}
# PM2_HOME (sockets, pid files) and Node's compile cache (os.tmpdir()) need a
# writable /tmp: a tmpfs or an emptyDir, so that the root filesystem can be
# read-only (`docker run --read-only` mounts no /tmp: add `--tmpfs /tmp`).
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8000 PM2_HOME=/tmp/pm2
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ecosystem.config.js ./
USER node
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "node_modules/pm2/bin/pm2-runtime", "start", "ecosystem.config.js"]

# The kit in a container: PM2 in the foreground (pm2-runtime), the same
# ecosystem file and preload as on a host. One container is one PM2 cluster of
# WEB_CONCURRENCY workers; scale out by running more containers.
#
#   docker build -t koa-otel-app .
#   docker run --rm -p 8000:8000 -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 koa-otel-app
#
# `docker stop` sends SIGTERM to pm2-runtime, which stops the workers with
# SIGINT: each drains, flushes its spans and exits well within Docker's 10 s.
# test/e2e/container.test.ts runs these steps and this command without Docker.

FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY otel ./otel
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8000
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ecosystem.config.js ./
USER node
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.PORT}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "node_modules/pm2/bin/pm2-runtime", "start", "ecosystem.config.js"]

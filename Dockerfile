# Sekisho in a container: official Node 20 image, native modules (better-sqlite3, argon2) built
# from source in a build stage, run as the image's non-root `node` user.
#
#   docker build -t sekisho .
#   docker run -d --name sekisho -p 127.0.0.1:3000:3000 \
#     -v sekisho-data:/var/lib/sekisho \
#     -v /etc/sekisho/keyring.json:/run/secrets/sekisho-keyring.json:ro \
#     --env-file /etc/sekisho/sekisho.env sekisho
#
# The keyring is mounted from outside (never baked into the image, never in the data volume):
# see docs/operations.md. `docker stop` sends SIGTERM: in-flight requests finish, then exit 0.

FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# Production dependencies only; tsx (which runs the TypeScript sources, no build step) is one.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY src ./src
COPY drizzle ./drizzle
COPY bin ./bin

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    SEKISHO_DATA_DIR=/var/lib/sekisho \
    SEKISHO_KEYRING_FILE=/run/secrets/sekisho-keyring.json
WORKDIR /app
COPY --from=build --chown=root:root /app /app
RUN mkdir -p /var/lib/sekisho && chown node:node /var/lib/sekisho && chmod 700 /var/lib/sekisho
USER node
VOLUME ["/var/lib/sekisho"]
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# Exec form: node is PID 1 and receives SIGTERM itself.
CMD ["node", "--max-semi-space-size=32", "--import", "tsx", "src/main.ts"]

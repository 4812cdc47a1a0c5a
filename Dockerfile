# warpd: one instance owns the devices of its host (DESIGN.md, "Past one machine").
FROM node:20-bookworm-slim
# MALLOC_TOP_PAD_: see README, "Memory allocator". glibc otherwise hands every freed
# megabyte-sized engine buffer back to the kernel and faults it in again on the next job.
ENV NODE_ENV=production \
    MALLOC_TOP_PAD_=67108864 \
    WARPD_HOST=0.0.0.0 \
    WARPD_PORT=8080 \
    WARPD_STATE_DIR=/var/lib/warpd
WORKDIR /app
COPY package.json package-lock.json ./
# tsx is a runtime dependency: the service runs its TypeScript directly.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY src ./src
COPY routes ./routes
COPY openapi ./openapi
COPY docs ./docs
RUN mkdir -p /var/lib/warpd && chown node:node /var/lib/warpd
USER node
VOLUME ["/var/lib/warpd"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.WARPD_PORT||8080)+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
# SIGTERM drains: every descriptor in flight completes before the process exits.
STOPSIGNAL SIGTERM
CMD ["node", "--import", "tsx", "src/server.ts"]

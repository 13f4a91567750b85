# llmrelay: a plain image that runs `llmrelay serve` as a non-root user.
FROM python:3.12-slim

# The pid file lives where the unprivileged user may write; `docker exec <container> llmrelay reload`
# finds it through the same variable and waits for the outcome. Logs are JSON lines on stderr (for a
# log pipeline) unless the config sets `server.log_format`; `-e LLMRELAY_LOG_FORMAT=text` for readable lines.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LLMRELAY_PID_FILE=/tmp/llmrelay.pid \
    LLMRELAY_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY llmrelay ./llmrelay
COPY supervisor ./supervisor
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin llmrelay

USER llmrelay
EXPOSE 8811
# Mount a config at /etc/llmrelay/llmrelay.toml (or set CONFIG_PATH); without one the embedded
# default serves /openai, /anthropic, /gemini and /groq with the clients' own keys.
# SIGTERM is a graceful stop: llmrelay stops accepting and lets requests and SSE streams in flight
# finish, for up to server.drain_timeout (default 600 s); a second SIGTERM, or SIGQUIT, stops at once.
# The orchestrator sends SIGKILL when its own grace period ends (`docker stop` waits 10 s unless given
# `-t`/`--stop-timeout`; Kubernetes waits `terminationGracePeriodSeconds`, default 30 s), and that cuts
# every stream still running. Set the two together: a grace period a little longer than drain_timeout,
# or a drain_timeout a little shorter than the grace period you can afford.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llmrelay"]
CMD ["serve", "--host", "0.0.0.0"]

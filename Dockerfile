# Tandem: one image for the web app, the workers and the migration step.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TANDEM_HOME=/var/lib/tandem

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/tandem tandem

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY tandem ./tandem
COPY review_ui ./review_ui
COPY workers ./workers
COPY migrations ./migrations
RUN pip install .

USER tandem
EXPOSE 8000
# Production mode needs DATABASE_URL, REDIS_URL and SECRET_KEY (see docker-compose.yml).
# `tandem serve` runs granian (WEB_CONCURRENCY processes × TANDEM_WEB_THREADS threads, JSON
# access log on stdout): docs/operations.md.
CMD ["tandem", "serve", "--host", "0.0.0.0", "--port", "8000"]

# One image for web, worker and beat; docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EXCHANGE_VAR_DIR=/var/lib/exchange

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --system --uid 10001 --home /app exchange \
    && mkdir -p /var/lib/exchange \
    && DEBUG=0 SECRET_KEY=collectstatic-only-never-used-to-sign-anything-0123456789 ALLOWED_HOSTS=localhost \
       python manage.py collectstatic --noinput \
    && chown -R exchange /var/lib/exchange
USER exchange

EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--access-logfile", "-"]

# keyserver service image: the embedded default (SQLite in /var/lib/keyserver), or PostgreSQL with
# KEYSERVER_DATABASE_URL. Build: docker build -t keyserver .   Run: docker run -p 8080:8080 keyserver
# On PostgreSQL the URL names the service role, which owns nothing; migrate first as the owner:
#   docker run -e KEYSERVER_DATABASE_URL=<owner URL> keyserver keyserver db upgrade --service-role <role>
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY requirements/runtime.txt requirements/runtime.txt
RUN python -m venv /opt/keyserver \
 && /opt/keyserver/bin/pip install --no-cache-dir --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md alembic.ini ./
COPY keyserver keyserver
COPY policy policy
COPY audit audit
COPY migrations migrations
COPY clients clients
COPY threshold threshold
RUN /opt/keyserver/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/keyserver keyserver \
 && mkdir -p /var/lib/keyserver && chown keyserver /var/lib/keyserver && chmod 700 /var/lib/keyserver
COPY --from=build /opt/keyserver /opt/keyserver
USER keyserver
ENV PATH=/opt/keyserver/bin:$PATH \
    KEYSERVER_DATA_DIR=/var/lib/keyserver \
    KEYSERVER_HOST=0.0.0.0 \
    KEYSERVER_PORT=8080
EXPOSE 8080
VOLUME /var/lib/keyserver
HEALTHCHECK --interval=30s --timeout=3s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
CMD ["keyserver", "serve"]

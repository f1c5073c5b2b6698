# PostgreSQL 15 with wal2json and wal_level=logical, for trying pgtape (see compose.yaml).
FROM postgres:15-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15-wal2json \
    && rm -rf /var/lib/apt/lists/*
COPY docker/postgres-start.sh /usr/local/bin/
ENTRYPOINT ["postgres-start.sh"]
CMD ["postgres"]

# fedsql: build the release binary, ship it on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config unixodbc-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --bin fedsql

FROM debian:bookworm-slim
# unixODBC is linked by the ODBC connector; the three drivers fedsql is tested
# with are included (add your warehouse's driver to /etc/odbcinst.ini).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates postgresql-client \
       unixodbc odbc-postgresql odbc-mariadb libsqliteodbc \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /data fedsql && mkdir -p /data && chown fedsql /data
COPY --from=build /src/target/release/fedsql /usr/local/bin/fedsql
USER fedsql
VOLUME ["/data"]
EXPOSE 5433 50051
# Inside a container the service must listen on all interfaces; publish the
# ports on the host's loopback only (see docker-compose.yml). A non-loopback
# address requires a password (SCRAM on the Postgres wire, basic auth on Flight
# SQL): pass it as FEDSQL_PASSWORD.
ENV FEDSQL_PASSWORD_ENV=FEDSQL_PASSWORD
CMD ["fedsql", "serve", "--data-dir", "/data", "--pg-listen", "0.0.0.0:5433", "--flight-listen", "0.0.0.0:50051"]

# The offline Prometheus image: Debian's prometheus package on the Debian base set-up builds (apt over the
# Debian mirror, which a build reaches where no image registry does). Where images can be pulled,
# prom/prometheus serves instead (compose.yaml's default). Built by infra/setup.sh.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /prometheus
EXPOSE 9090
CMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

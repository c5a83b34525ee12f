# Build the wheel in one stage, install it in a slim runtime as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY incident_connector ./incident_connector
COPY twisted ./twisted
# The dependency versions CI tested (constraints.txt), not whatever is newest.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/incident-connector --create-home connector
# The state directory (the generated key) is a volume owned by the connector, so a
# read-only root filesystem still has one writable place: ECS copies the image's
# directory, ownership included, into the volume mounted at the same path.
RUN install -d -o connector -g connector -m 0700 /var/lib/incident-connector/state
VOLUME ["/var/lib/incident-connector/state"]
COPY --from=build /wheels /wheels
# The plugin cache is built now so `twistd incident-connector` (still installed)
# never writes it at run time; connector-proxy does not use plugins at all.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "from twisted.plugin import getPlugins, IPlugin; list(getPlugins(IPlugin))"
USER connector
WORKDIR /var/lib/incident-connector
# Every option is also an environment variable: INCIDENT_CONNECTOR_<OPTION>
# (the connector ID: INCIDENT_CONNECTOR_ID).  Flags go after the image name.
ENV PYTHONUNBUFFERED=1
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]
ENTRYPOINT ["connector-proxy"]

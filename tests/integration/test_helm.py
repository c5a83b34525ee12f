"""
The Helm chart (charts/incident-connector) and the plain manifests generated
from it (deploy/kubernetes/): rendered with a real C{helm} binary, every
manifest validated offline against the Kubernetes OpenAPI schemas
(C{kubernetes-validate}, strict: unknown fields fail) for the oldest and newest
Kubernetes the chart supports.  No cluster runs here: what a kubelet or the
Prometheus Operator would do with these objects is not tested.

C{helm} comes from C{$HELM}, C{PATH} or C{.tools/bin} (C{bash scripts/install-helm.sh}).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from twisted.trial.unittest import SynchronousTestCase

from incident_connector.options import OPTIONS, envName

from .harness import REPO

CHART = REPO / "charts" / "incident-connector"
PLAIN = REPO / "deploy" / "kubernetes" / "incident-connector.yaml"
#: The oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version() + ".0")
#: Environment variables the chart sets that the connector does not read yet: the
#: connector ID's new name and the allowlist file (both pending in other branches).
PENDING_ENV = {"INCIDENT_CONNECTOR_ID", "INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST_FILE"}

Manifest = dict[str, Any]


def findHelm() -> str:
    """
    The helm binary, or an assertion that says how to install it (never a skip).
    """
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(REPO / ".tools" / "bin" / "helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError("helm not found ($HELM, PATH, .tools/bin/helm): run  bash scripts/install-helm.sh")


def valuesFile(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def leafPaths(values: Any, prefix: str = "") -> Iterator[str]:
    """
    Every key path in a values tree (C{image.tag}, C{networkPolicy.dns}); an
    empty map is a leaf.
    """
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leafPaths(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


# ServiceMonitor and PodMonitor are Prometheus Operator CRDs, for which the
# Kubernetes schemas have nothing: these check the fields we set, strictly.
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string", "pattern": "^/"},
        "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
    },
}


def _monitorSchema(kind: str, endpoints: str) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    },
                    endpoints: {"type": "array", "minItems": 1, "items": _ENDPOINT},
                },
            },
        },
    }


CRD_SCHEMAS = {
    "ServiceMonitor": _monitorSchema("ServiceMonitor", "endpoints"),
    "PodMonitor": _monitorSchema("PodMonitor", "podMetricsEndpoints"),
}


#: Manifests already found valid (many renders share most of their objects), and
#: helm's output by its inputs: the tests render the same values more than once.
_valid: set[str] = set()
_rendered: dict[str, str] = {}


class HelmTestCase(SynchronousTestCase):
    """
    Renders the chart with C{helm template} and validates what comes out.
    """

    def setUp(self) -> None:
        self.helm = findHelm()

    def helmRun(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=60)

    def renderText(self, values: dict[str, Any] | None = None, base: str = "minimal", *extra: str) -> str:
        """
        The output of C{helm template}, with C{ci/<base>-values.yaml} and then C{values} on top.
        """
        key = json.dumps([values, base, extra], sort_keys=True)
        if key not in _rendered:
            args = ["template", "incident-connector", str(CHART), "-f", str(valuesFile(base)), *extra]
            if values is not None:
                path = Path(self.mktemp())
                path.write_text(json.dumps(values))  # JSON is YAML
                args += ["-f", str(path)]
            result = self.helmRun(*args)
            self.assertEqual(result.returncode, 0, result.stderr)
            _rendered[key] = result.stdout
        return _rendered[key]

    def render(self, values: dict[str, Any] | None = None, base: str = "minimal") -> dict[str, Manifest]:
        """
        The rendered manifests by kind (the chart makes at most one of each),
        each validated first.
        """
        manifests: dict[str, Manifest] = {}
        for document in yaml.safe_load_all(self.renderText(values, base)):
            if document is None:
                continue
            self.assertValid(document)
            self.assertNotIn(document["kind"], manifests)
            manifests[document["kind"]] = document
        return manifests

    def renderFails(self, values: dict[str, Any], base: str = "minimal") -> str:
        """
        Render, expecting helm to refuse; the error text.
        """
        path = Path(self.mktemp())
        path.write_text(json.dumps(values))
        result = self.helmRun(
            "template", "incident-connector", str(CHART), "-f", str(valuesFile(base)), "-f", str(path)
        )
        self.assertNotEqual(result.returncode, 0, f"helm accepted {values}")
        self.assertEqual(result.stdout, "")
        return result.stderr

    def assertValid(self, manifest: Manifest) -> None:
        """
        Valid for every supported Kubernetes version (strict: unknown fields
        fail), or against our own schema for a Prometheus Operator CRD.
        """
        key = json.dumps(manifest, sort_keys=True)
        if key in _valid:
            return
        self._validate(manifest)
        _valid.add(key)

    def _validate(self, manifest: Manifest) -> None:
        if manifest["kind"] in CRD_SCHEMAS:
            jsonschema.validate(manifest, CRD_SCHEMAS[manifest["kind"]])
            return
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                self.fail(f"{manifest['kind']} {manifest['metadata']['name']} invalid for Kubernetes {version}: {e}")

    def pod(self, manifests: dict[str, Manifest]) -> Manifest:
        return manifests["Deployment"]["spec"]["template"]

    def container(self, manifests: dict[str, Manifest]) -> Manifest:
        containers = self.pod(manifests)["spec"]["containers"]
        self.assertEqual(len(containers), 1)
        return containers[0]

    def env(self, manifests: dict[str, Manifest]) -> dict[str, Any]:
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.container(manifests)["env"]}


class RenderTests(HelmTestCase):
    def test_lint(self) -> None:
        """
        C{helm lint --strict} passes with each values file under ci/.
        """
        files = sorted((CHART / "ci").glob("*-values.yaml"))
        self.assertEqual([f.name.split("-values")[0] for f in files], ["all-options", "minimal", "podmonitor"])
        for path in files:
            result = self.helmRun("lint", "--strict", str(CHART), "-f", str(path))
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_defaults(self) -> None:
        """
        The least configuration renders valid manifests: the allowlist
        ConfigMap, the Deployment, the PodDisruptionBudget and nothing else.
        """
        manifests = self.render()
        self.assertEqual(set(manifests), {"ConfigMap", "Deployment", "PodDisruptionBudget"})
        self.assertEqual(manifests["Deployment"]["spec"]["replicas"], 2)

    def test_everyOption(self) -> None:
        """
        ci/all-options and ci/podmonitor between them set every value the chart
        has; each renders valid manifests, optional objects included.
        """
        declared = set(leafPaths(yaml.safe_load((CHART / "values.yaml").read_text())))
        covered = set()
        for name in ("all-options", "podmonitor"):
            covered |= set(leafPaths(yaml.safe_load(valuesFile(name).read_text())))
        uncovered = {p for p in declared if not any(c == p or c.startswith(p + ".") for c in covered)}
        self.assertEqual(uncovered, set(), "values no test file sets")
        everything = self.render(base="all-options")
        self.assertEqual(
            set(everything),
            {"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "ServiceMonitor"},
        )
        self.assertEqual(
            set(self.render(base="podmonitor")),
            {"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "PodMonitor"},
        )

    def test_oldestKubernetes(self) -> None:
        """
        Chart.yaml's kubeVersion is enforced: 1.27 renders, 1.26 is refused.
        """
        self.renderText(None, "minimal", "--kube-version", "1.27.0")
        result = self.helmRun("template", "x", str(CHART), "-f", str(valuesFile("minimal")), "--kube-version", "1.26.9")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("kubeVersion", result.stderr)

    def test_environmentNamesAreOptions(self) -> None:
        """
        Every INCIDENT_CONNECTOR_* variable the chart sets names an option of
        the connector (or one of the two pending in other branches).
        """
        known = {envName(name) for name, *_ in OPTIONS} | PENDING_ENV
        for base in ("all-options", "podmonitor"):
            names = {name for name in self.env(self.render(base=base)) if name.startswith("INCIDENT_CONNECTOR_")}
            self.assertEqual(names - known, set())


class PodTests(HelmTestCase):
    def test_probes(self) -> None:
        """
        Liveness on /healthz and readiness on /readyz, on the metrics port 9090.
        """
        container = self.container(self.render())
        self.assertEqual(container["ports"], [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}])
        self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"})
        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
        self.assertEqual(self.env(self.render())["INCIDENT_CONNECTOR_METRICS_LISTEN"], "tcp:9090")

    def test_securityContext(self) -> None:
        """
        Non-root (uid 10001), RuntimeDefault seccomp, no privilege escalation,
        no capabilities, a read-only root filesystem, no API token mounted;
        with every option set too (no value weakens it).
        """
        for base in ("minimal", "all-options"):
            manifests = self.render(base=base)
            spec = self.pod(manifests)["spec"]
            self.assertEqual(
                spec["securityContext"],
                {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "fsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            )
            self.assertIs(spec["automountServiceAccountToken"], False)
            self.assertIs(spec["enableServiceLinks"], False)
            self.assertEqual(
                self.container(manifests)["securityContext"],
                {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            )

    def test_stateDirectory(self) -> None:
        """
        The state directory (the generated key) is a directory the connector
        creates (mode 0700) inside a writable emptyDir: an emptyDir itself is
        world-writable, which the connector refuses for its key.
        """
        manifests = self.render()
        stateDir = self.env(manifests)["INCIDENT_CONNECTOR_STATE_DIR"]
        mounts = {m["mountPath"]: m for m in self.container(manifests)["volumeMounts"]}
        self.assertEqual(stateDir.rsplit("/", 1)[1], "connector")
        stateDir = stateDir.rsplit("/", 1)[0]
        self.assertFalse(mounts[stateDir].get("readOnly", False))
        volumes = {v["name"]: v for v in self.pod(manifests)["spec"]["volumes"]}
        self.assertIn("emptyDir", volumes[mounts[stateDir]["name"]])

    def test_gracePeriod(self) -> None:
        """
        The kubelet waits longer than --grace-period before SIGKILL, whatever
        the grace period.
        """
        # A string is what --set gracePeriod=7.5 gives.
        for gracePeriod, expected in [(0, 15), (30, 45), (62.5, 78), (600, 615), ("7.2", 23)]:
            manifests = self.render({"gracePeriod": gracePeriod})
            self.assertEqual(float(self.env(manifests)["INCIDENT_CONNECTOR_GRACE_PERIOD"]), float(gracePeriod))
            terminationGrace = self.pod(manifests)["spec"]["terminationGracePeriodSeconds"]
            self.assertEqual(terminationGrace, expected)
            self.assertGreater(terminationGrace, float(gracePeriod))

    def test_rollout(self) -> None:
        """
        A rollout starts the new pod before stopping an old one.
        """
        strategy = self.render()["Deployment"]["spec"]["strategy"]
        self.assertEqual(strategy["rollingUpdate"], {"maxSurge": 1, "maxUnavailable": 0})

    def test_podDisruptionBudget(self) -> None:
        """
        The budget selects exactly the Deployment's pods and lets one go at a
        time; unready pods (relay down) may still be evicted.  It can be turned off.
        """
        manifests = self.render()
        budget = manifests["PodDisruptionBudget"]["spec"]
        self.assertEqual(budget["maxUnavailable"], 1)
        self.assertEqual(budget["unhealthyPodEvictionPolicy"], "AlwaysAllow")
        self.assertEqual(budget["selector"], manifests["Deployment"]["spec"]["selector"])
        self.assertLessEqual(
            budget["selector"]["matchLabels"].items(), self.pod(manifests)["metadata"]["labels"].items()
        )
        self.assertNotIn("PodDisruptionBudget", self.render({"podDisruptionBudget": {"enabled": False}}))

    def test_topologySpread(self) -> None:
        """
        Replicas spread across nodes (and zones), counting only this release's pods.
        """
        manifests = self.render()
        constraints = {c["topologyKey"]: c for c in self.pod(manifests)["spec"]["topologySpreadConstraints"]}
        self.assertEqual(set(constraints), {"kubernetes.io/hostname", "topology.kubernetes.io/zone"})
        nodes = constraints["kubernetes.io/hostname"]
        self.assertEqual((nodes["maxSkew"], nodes["whenUnsatisfiable"]), (1, "ScheduleAnyway"))
        self.assertEqual(nodes["labelSelector"], manifests["Deployment"]["spec"]["selector"])
        strict = self.render({"topologySpread": {"whenUnsatisfiable": "DoNotSchedule", "zones": False}})
        [only] = self.pod(strict)["spec"]["topologySpreadConstraints"]
        self.assertEqual((only["topologyKey"], only["whenUnsatisfiable"]), ("kubernetes.io/hostname", "DoNotSchedule"))

    def test_scheduling(self) -> None:
        """
        nodeSelector, tolerations, affinity, resources reach the pod as given.
        """
        values = yaml.safe_load(valuesFile("all-options").read_text())
        manifests = self.render(base="all-options")
        spec = self.pod(manifests)["spec"]
        for key in ("nodeSelector", "tolerations", "affinity"):
            self.assertEqual(spec[key], values[key])
        self.assertEqual(self.container(manifests)["resources"], values["resources"])

    def test_configuration(self) -> None:
        """
        Values become the connector's environment: ID, connections, relay, API,
        log settings, extra variables; the image is pinned by digest.
        """
        manifests = self.render(base="all-options")
        env = self.env(manifests)
        self.assertEqual(env["INCIDENT_CONNECTOR_ID"], "conn_01TESTALLOPTIONS")
        self.assertEqual(env["INCIDENT_CONNECTOR_CONNECTIONS"], "4")
        self.assertEqual(env["INCIDENT_CONNECTOR_RELAY_ADDRESS"], "relay.example.com:2222")
        self.assertEqual(env["INCIDENT_CONNECTOR_API_URL"], "https://api.example.com:8443")
        self.assertEqual((env["INCIDENT_CONNECTOR_LOG_FORMAT"], env["INCIDENT_CONNECTOR_LOG_LEVEL"]), ("text", "debug"))
        self.assertEqual(env["INCIDENT_CONNECTOR_MAX_STREAMS"], "2048")
        self.assertEqual(
            self.container(manifests)["image"],
            "registry.example.com/incident-connector:0.2.0@sha256:" + "0123456789abcdef" * 4,
        )
        self.assertEqual(self.container(self.render())["image"], "incident-connector:0.1.0")

    def test_proxy(self) -> None:
        """
        HTTPS_PROXY and NO_PROXY: in plain text, or the proxy URL (with its
        password) from a Secret.  A password in plain values is refused.
        """
        env = self.env(self.render({"proxy": {"httpsProxy": "http://proxy.internal:3128", "noProxy": ".internal"}}))
        self.assertEqual((env["HTTPS_PROXY"], env["NO_PROXY"]), ("http://proxy.internal:3128", ".internal"))
        env = self.env(self.render(base="all-options"))
        self.assertEqual(env["HTTPS_PROXY"], {"secretKeyRef": {"name": "proxy-url", "key": "url"}})
        error = self.renderFails({"proxy": {"httpsProxy": "http://alice:s3cret@proxy.internal:3128"}})
        self.assertIn("proxy.httpsProxy", error)


class TokenTests(HelmTestCase):
    def test_existingSecret(self) -> None:
        """
        The token is a file from the named Secret; the chart makes no Secret.
        """
        manifests = self.render()
        self.assertNotIn("Secret", manifests)
        env = self.env(manifests)
        self.assertNotIn("INCIDENT_CONNECTOR_API_TOKEN", env)
        tokenFile = Path(env["INCIDENT_CONNECTOR_API_TOKEN_FILE"])
        mounts = {m["name"]: m for m in self.container(manifests)["volumeMounts"]}
        volumes = {v["name"]: v for v in self.pod(manifests)["spec"]["volumes"]}
        [name] = [name for name, m in mounts.items() if Path(m["mountPath"]) == tokenFile.parent]
        self.assertTrue(mounts[name]["readOnly"])
        secret = volumes[name]["secret"]
        self.assertEqual(secret["secretName"], "incident-connector")
        self.assertEqual(secret["items"], [{"key": "api-token", "path": tokenFile.name}])

    def test_chartMadeSecret(self) -> None:
        """
        With token.value the chart makes the Secret; the token appears nowhere
        else, and a new token rolls the pods.
        """
        token = "tok_" + "x" * 40
        text = self.renderText({"token": {"existingSecret": "", "value": token}})
        self.assertNotIn(token, text)
        manifests = self.render({"token": {"existingSecret": "", "value": token}})
        secret = manifests["Secret"]
        self.assertEqual(base64.b64decode(secret["data"]["api-token"]).decode(), token)
        volume = next(v for v in self.pod(manifests)["spec"]["volumes"] if "secret" in v)
        self.assertEqual(volume["secret"]["secretName"], secret["metadata"]["name"])
        other = self.render({"token": {"existingSecret": "", "value": token + "y"}})
        key = "checksum/token"
        self.assertNotEqual(
            self.pod(manifests)["metadata"]["annotations"][key], self.pod(other)["metadata"]["annotations"][key]
        )

    def test_noToken(self) -> None:
        error = self.renderFails({"token": {"existingSecret": ""}})
        self.assertIn("set token.existingSecret", error)

    def test_twoTokens(self) -> None:
        error = self.renderFails({"token": {"existingSecret": "incident-connector", "value": "tok"}})
        self.assertIn("not both", error)


class AllowlistTests(HelmTestCase):
    ALLOWLIST = ["grafana.internal:3000", "10.0.0.0/8:5432"]

    def test_file(self) -> None:
        """
        allowlistFile: true (default): the ConfigMap is mounted as a directory
        (so the kubelet can update it in place) and named by
        INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST_FILE.  Changing the list
        changes the ConfigMap only, not the pod template: no restart.
        """
        manifests = self.render({"allowlist": self.ALLOWLIST})
        configMap = manifests["ConfigMap"]
        self.assertEqual(configMap["data"]["allowlist"], "grafana.internal:3000\n10.0.0.0/8:5432\n")
        path = Path(self.env(manifests)["INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST_FILE"])
        self.assertNotIn("INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST", self.env(manifests))
        [mount] = [m for m in self.container(manifests)["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        self.assertNotIn("subPath", mount)
        volume = next(v for v in self.pod(manifests)["spec"]["volumes"] if v["name"] == mount["name"])
        self.assertEqual(volume["configMap"]["name"], configMap["metadata"]["name"])
        self.assertIn(path.name, configMap["data"])
        changed = self.render({"allowlist": [*self.ALLOWLIST, "*.example.internal:443"]})
        self.assertNotEqual(changed["ConfigMap"]["data"], configMap["data"])
        self.assertEqual(self.pod(changed), self.pod(manifests))

    def test_flag(self) -> None:
        """
        allowlistFile: false: the same ConfigMap is the value of
        INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST (whitespace-separated), and
        the pod template carries its checksum, so a change rolls the pods.
        """
        manifests = self.render({"allowlist": self.ALLOWLIST, "allowlistFile": False})
        env = self.env(manifests)
        self.assertNotIn("INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST_FILE", env)
        self.assertEqual(
            env["INCIDENT_CONNECTOR_FORWARD_DEST_ALLOWLIST"],
            {"configMapKeyRef": {"name": manifests["ConfigMap"]["metadata"]["name"], "key": "allowlist"}},
        )
        self.assertEqual(manifests["ConfigMap"]["data"]["allowlist"].split(), self.ALLOWLIST)
        annotations = self.pod(manifests)["metadata"]["annotations"]
        changed = self.render({"allowlist": [*self.ALLOWLIST, "*.example.internal:443"], "allowlistFile": False})
        self.assertNotEqual(
            self.pod(changed)["metadata"]["annotations"]["checksum/allowlist"], annotations["checksum/allowlist"]
        )
        same = self.render({"allowlist": self.ALLOWLIST, "allowlistFile": False, "logLevel": "debug"})
        self.assertEqual(
            self.pod(same)["metadata"]["annotations"]["checksum/allowlist"], annotations["checksum/allowlist"]
        )

    def test_required(self) -> None:
        """
        An empty allowlist (which would allow everything) is refused; so is an
        entry that would split in two or read as a comment.
        """
        self.assertIn('list the destinations to allow (or the single entry "any")', self.renderFails({"allowlist": []}))
        self.assertIn("allowlist.0", self.renderFails({"allowlist": ["a:1 b:2"]}))
        self.assertIn("allowlist.0", self.renderFails({"allowlist": ["#a:1"]}))


class SchemaTests(HelmTestCase):
    def test_typos(self) -> None:
        """
        A misspelt key or a wrong type fails before anything is rendered,
        naming the culprit (helm install checks the same schema).
        """
        for values, culprit in [
            ({"replica": 3}, "replica"),
            ({"image": {"tags": "1.0"}}, "tags"),
            ({"podDisruptionBudget": {"maxUnavailble": 1}}, "maxUnavailble"),
            ({"networkPolicy": {"enabled": True, "relayCidrs": ["10.0.0.0/8"]}}, "relayCidrs"),
            ({"connections": "two"}, "connections"),
            ({"gracePeriod": -1}, "gracePeriod"),
            ({"gracePeriod": "30s"}, "gracePeriod"),
            ({"logFormat": "yaml"}, "logFormat"),
            ({"image": {"digest": "latest"}}, "image.digest"),
            ({"networkPolicy": {"relayCIDRs": ["relay.incident.io"]}}, "relayCIDRs"),
        ]:
            error = self.renderFails(values)
            self.assertIn("values don't meet the specifications of the schema", error)
            self.assertIn(culprit, error)

    def test_schemaIsValid(self) -> None:
        """
        values.schema.json is itself a valid draft-07 schema, and the chart's
        defaults satisfy it.
        """
        schema = json.loads((CHART / "values.schema.json").read_text())
        jsonschema.Draft7Validator.check_schema(schema)
        jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))

    def test_parentChartGlobals(self) -> None:
        """
        Used as a subchart, the parent's global values do not trip the schema.
        """
        self.render({"global": {"imageRegistry": "registry.example.com"}})

    def test_requiredValues(self) -> None:
        self.assertIn("connectorId is required", self.renderFails({"connectorId": ""}))
        self.assertIn("networkPolicy.relayCIDRs is empty", self.renderFails({"networkPolicy": {"enabled": True}}))
        self.assertIn(
            "not both",
            self.renderFails({"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}}),
        )


class MetricsTests(HelmTestCase):
    def test_serviceMonitor(self) -> None:
        """
        The ServiceMonitor selects the metrics Service, which selects the pods'
        metrics port.
        """
        manifests = self.render(base="all-options")
        service, monitor = manifests["Service"], manifests["ServiceMonitor"]
        self.assertLessEqual(monitor["spec"]["selector"]["matchLabels"].items(), service["metadata"]["labels"].items())
        self.assertEqual(monitor["spec"]["endpoints"], [{"port": "metrics", "path": "/metrics", "interval": "15s"}])
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prometheus")
        self.assertEqual(service["spec"]["ports"][0]["targetPort"], "metrics")
        self.assertEqual(service["spec"]["selector"], manifests["Deployment"]["spec"]["selector"]["matchLabels"])

    def test_podMonitor(self) -> None:
        manifests = self.render(base="podmonitor")
        monitor = manifests["PodMonitor"]["spec"]
        self.assertEqual(monitor["selector"], manifests["Deployment"]["spec"]["selector"])
        self.assertEqual(monitor["podMetricsEndpoints"][0]["port"], "metrics")

    def test_scrapeAnnotations(self) -> None:
        annotations = self.pod(self.render())["metadata"]["annotations"]
        self.assertEqual((annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]), ("true", "9090"))
        self.assertNotIn("prometheus.io/scrape", self.pod(self.render(base="all-options"))["metadata"]["annotations"])


class NetworkPolicyTests(HelmTestCase):
    def egress(self, manifests: dict[str, Manifest]) -> list[tuple[list[Any], list[Any]]]:
        return [(rule["to"], rule.get("ports", [])) for rule in manifests["NetworkPolicy"]["spec"]["egress"]]

    def test_egressOnlyToRelayDNSAndDestinations(self) -> None:
        """
        Egress rules: the relay and API networks on the relay's and API's
        ports, DNS on 53, each listed destination; nothing else.
        """
        manifests = self.render(
            {
                "relayAddress": "relay.example.com:2222",
                "networkPolicy": {
                    "enabled": True,
                    "relayCIDRs": ["203.0.113.0/24"],
                    "destinations": [{"cidr": "10.20.0.0/16", "ports": [9090]}],
                },
            }
        )
        policy = manifests["NetworkPolicy"]["spec"]
        self.assertEqual(policy["podSelector"], manifests["Deployment"]["spec"]["selector"])
        self.assertEqual(set(policy["policyTypes"]), {"Ingress", "Egress"})
        self.assertEqual(
            self.egress(manifests),
            [
                (
                    [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                    [{"port": 2222, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
                ),
                (
                    [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                ),
                ([{"ipBlock": {"cidr": "10.20.0.0/16"}}], [{"port": 9090, "protocol": "TCP"}]),
            ],
        )
        self.assertEqual(policy["ingress"], [{"ports": [{"port": "metrics", "protocol": "TCP"}]}])

    def test_proxyPort(self) -> None:
        """
        Through a proxy, the proxy's port is allowed too; relayPorts overrides,
        and is required when the proxy URL is in a Secret.
        """
        values: dict[str, Any] = {
            "proxy": {"httpsProxy": "http://proxy.internal:3128"},
            "networkPolicy": {"enabled": True, "relayCIDRs": ["198.51.100.7/32"]},
        }
        [relay, *_] = self.egress(self.render(values))
        self.assertEqual([p["port"] for p in relay[1]], [443, 3128])
        values["networkPolicy"]["relayPorts"] = [8080]
        [relay, *_] = self.egress(self.render(values))
        self.assertEqual([p["port"] for p in relay[1]], [8080])
        fromSecret = {
            "proxy": {"fromSecret": {"name": "proxy-url", "key": "url"}},
            "networkPolicy": {"enabled": True, "relayCIDRs": ["198.51.100.7/32"]},
        }
        self.assertIn("networkPolicy.relayPorts is required with proxy.fromSecret", self.renderFails(fromSecret))

    def test_selectorDestination(self) -> None:
        """
        A destination inside the cluster is named by its pods, not addresses.
        """
        manifests = self.render(base="all-options")
        [_, _, _, grafana] = self.egress(manifests)
        self.assertEqual(grafana[0][0]["podSelector"], {"matchLabels": {"app.kubernetes.io/name": "grafana"}})
        self.assertEqual(grafana[1], [{"port": 3000, "protocol": "TCP"}])


class PlainManifestsTests(HelmTestCase):
    """
    deploy/kubernetes/incident-connector.yaml is the chart rendered by
    scripts/render-kubernetes.sh, for C{kubectl apply}.
    """

    def test_generatedFromChart(self) -> None:
        out = Path(self.mktemp())
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "render-kubernetes.sh"), str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "HELM": self.helm},
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            out.read_text(), PLAIN.read_text(), "deploy/kubernetes is stale: run  bash scripts/render-kubernetes.sh"
        )

    def test_valid(self) -> None:
        """
        The only file in deploy/kubernetes; valid objects; the token comes from
        the Secret the README has you create, never inline.
        """
        self.assertEqual(sorted(p.name for p in PLAIN.parent.iterdir()), [PLAIN.name])
        documents = [d for d in yaml.safe_load_all(PLAIN.read_text()) if d]
        for document in documents:
            self.assertValid(document)
            self.assertNotIn("managed-by", json.dumps(document["metadata"].get("labels", {})))
        manifests = {d["kind"]: d for d in documents}
        self.assertEqual(set(manifests), {"ConfigMap", "Deployment", "PodDisruptionBudget"})
        [secret] = [v["secret"] for v in self.pod(manifests)["spec"]["volumes"] if "secret" in v]
        self.assertEqual(secret["secretName"], "incident-connector")
        self.assertEqual(secret["items"], [{"key": "api-token", "path": "api-token"}])

"""
deploy/ecs/task-definition.json: accepted as the input of ECS
RegisterTaskDefinition (botocore's own model of the API, offline: unknown or
misspelt fields fail), and has the properties a connector needs, checked by a
schema of our own.  Its health check command runs against a local server.  No
AWS account is used: what ECS or Fargate does with it is not tested here.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading
from typing import Any

import jsonschema
from botocore.loaders import Loader
from botocore.model import ServiceModel
from botocore.validate import ParamValidator
from dockerfile_parse import DockerfileParser
from twisted.trial.unittest import SynchronousTestCase

from .harness import REPO

TASK_DEFINITION = REPO / "deploy" / "ecs" / "task-definition.json"


def _env(name: str) -> dict[str, Any]:
    return {"contains": {"type": "object", "required": ["name"], "properties": {"name": {"const": name}}}}


#: What the connector's container definition must say; the rest is free.
CONTAINER = {
    "type": "object",
    "required": [
        "name", "image", "essential", "user", "readonlyRootFilesystem", "stopTimeout", "environment", "secrets",
        "healthCheck", "logConfiguration", "mountPoints", "portMappings", "linuxParameters",
    ],
    "properties": {
        "essential": {"const": True},
        # Non-root: a numeric uid (and gid) other than 0, as the image's user.
        "user": {"type": "string", "pattern": "^(?!0(:|$))[0-9]+(:[0-9]+)?$"},
        "readonlyRootFilesystem": {"const": True},
        "stopTimeout": {"type": "integer", "minimum": 1, "maximum": 120},
        "linuxParameters": {
            "type": "object",
            "required": ["capabilities"],
            "properties": {"capabilities": {"required": ["drop"], "properties": {"drop": {"const": ["ALL"]}}}},
        },
        "environment": {
            "type": "array",
            "items": {"type": "object", "required": ["name", "value"]},
            "allOf": [_env("INCIDENT_CONNECTOR_ID"), _env("INCIDENT_CONNECTOR_STATE_DIR")],
            # The token never travels in plain environment values.
            "not": {"contains": {"properties": {"name": {"pattern": "TOKEN"}}}},
        },
        "secrets": {
            "type": "array",
            "contains": {
                "type": "object",
                "required": ["name", "valueFrom"],
                "properties": {
                    "name": {"const": "INCIDENT_CONNECTOR_API_TOKEN"},
                    "valueFrom": {"type": "string", "pattern": "^arn:aws:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:"},
                },
            },
        },
        "healthCheck": {
            "type": "object",
            "required": ["command", "interval", "timeout", "retries"],
            "properties": {"command": {"type": "array", "prefixItems": [{"const": "CMD"}], "minItems": 2}},
        },
        "logConfiguration": {
            "type": "object",
            "required": ["logDriver", "options"],
            "properties": {
                "logDriver": {"const": "awslogs"},
                "options": {"type": "object", "required": ["awslogs-group", "awslogs-region", "awslogs-stream-prefix"]},
            },
        },
        "portMappings": {"contains": {"properties": {"containerPort": {"const": 9090}}}},
    },
}  # fmt: skip

TASK = {
    "type": "object",
    "required": ["family", "containerDefinitions", "volumes", "executionRoleArn"],
    "properties": {"containerDefinitions": {"type": "array", "minItems": 1, "maxItems": 1, "items": CONTAINER}},
}


class TaskDefinitionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.task = json.loads(TASK_DEFINITION.read_text())
        [self.container] = self.task["containerDefinitions"]
        self.env = {e["name"]: e["value"] for e in self.container["environment"]}

    def test_registerTaskDefinitionInput(self) -> None:
        """
        The file is valid input for C{aws ecs register-task-definition
        --cli-input-json}, by botocore's model of the API.
        """
        model = ServiceModel(Loader().load_service_model("ecs", "service-2"), "ecs")
        shape = model.operation_model("RegisterTaskDefinition").input_shape
        report = ParamValidator().validate(self.task, shape)
        self.assertFalse(report.has_errors(), report.generate_report())
        misspelt = json.loads(TASK_DEFINITION.read_text())
        misspelt["containerDefinitions"][0]["readOnlyRootFilesystem"] = True
        self.assertIn("readOnlyRootFilesystem", ParamValidator().validate(misspelt, shape).generate_report())

    def test_properties(self) -> None:
        """
        Token from Secrets Manager, non-root, read-only root, no capabilities,
        health check, awslogs, metrics port.
        """
        jsonschema.Draft202012Validator(TASK).validate(self.task)

    def test_stopTimeoutAboveGracePeriod(self) -> None:
        """
        ECS waits longer than --grace-period before SIGKILL.
        """
        gracePeriod = float(self.env.get("INCIDENT_CONNECTOR_GRACE_PERIOD", 30))
        self.assertGreater(self.container["stopTimeout"], gracePeriod)

    def test_stateVolume(self) -> None:
        """
        The state directory is a task volume mounted read-write where the image
        declares a VOLUME owned by its user, so ECS (Fargate included) gives the
        non-root user a writable directory under a read-only root.
        """
        stateDir = self.env["INCIDENT_CONNECTOR_STATE_DIR"]
        [mount] = [m for m in self.container["mountPoints"] if m["containerPath"] == stateDir]
        self.assertFalse(mount["readOnly"])
        self.assertIn(mount["sourceVolume"], [v["name"] for v in self.task["volumes"]])
        with open(REPO / "Dockerfile", "rb") as f:
            parser = DockerfileParser(fileobj=f)
            instructions = [(i["instruction"], i["value"]) for i in parser.structure]
        final = instructions[max(i for i, (name, _) in enumerate(instructions) if name == "FROM") :]
        volumes = [json.loads(value) for name, value in final if name == "VOLUME"]
        self.assertIn([stateDir], volumes)
        self.assertTrue(
            any(name == "RUN" and re.search(rf"-o connector\b.*{re.escape(stateDir)}", value) for name, value in final),
            "the image must create the state directory owned by its user",
        )

    def test_healthCheckCommand(self) -> None:
        """
        The health check command passes while /healthz answers 200 and fails
        when it answers 503 (run here against a local server on a free port).
        """
        command = self.container["healthCheck"]["command"]
        self.assertEqual(command[:3], ["CMD", "python", "-c"])
        self.assertIn("http://127.0.0.1:9090/healthz", command[3])
        for status, expected in [(200, 0), (503, 1)]:
            server = _serve(status)
            self.addCleanup(server.server_close)
            self.addCleanup(server.shutdown)
            probe = command[3].replace(":9090/", f":{server.server_address[1]}/")
            result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
            self.assertEqual(result.returncode, expected, result.stderr)


def _serve(status: int) -> http.server.HTTPServer:
    """
    A loopback HTTP server answering C{status} to C{/healthz}, in a thread.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

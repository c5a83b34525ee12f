"""
The single-file executable's entry point (scripts/build-binary.sh): exactly
what the connector-proxy console script runs.
"""

import sys

from incident_connector.main import run

sys.exit(run())

"""
incident-connector: lets a SaaS incident platform reach data sources inside a
private network through an outbound SSH tunnel and a SOCKS allowlist.
"""

__version__ = "0.1.0"

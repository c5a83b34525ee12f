"""
The SSH side: transport to the relay, user authentication, the connection
service with its remote forward, and the service that keeps it up.
"""

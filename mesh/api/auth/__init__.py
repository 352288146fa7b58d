"""Who may do what on a server of the fabric: permissions per method, credentials, the gRPC interceptor."""

"""The remote ``keyserver`` CLI: a tenant admin's, a CI job's and an auditor's commands, over the SDK.

``keyserver --url URL …`` or ``keyserver --profile NAME …`` (docs/cli.md). It imports only the SDK and
audit/, never the server application, so it installs and runs wherever the SDK does.
"""

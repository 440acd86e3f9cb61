"""A C2SP tlog-witness for other keyservers' release logs: protocol (pure), store, service, HTTP edge."""

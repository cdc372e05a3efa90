"""The one small library every chatmesh process shares: configuration, logging, gRPC server
lifecycle, domain errors, mesh channels, tracing (`telemetry`) and metrics (`metrics`). No service
copies any of it."""

"""The one small library every chatmesh process shares: configuration, logging, gRPC server
lifecycle, domain errors and mesh channels. No service copies any of it."""

"""Real local servers that implement provider contracts (Twilio, Google OAuth2 + FCM, webhooks,
SMTP over TLS), so channel tests exercise real HTTP/SMTP I/O instead of mocks."""

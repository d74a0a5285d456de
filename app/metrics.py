"""Prometheus metrics of one worker, in a registry of its own (one per app, so tests can run
several apps in one process). Exposed at ``GET /metrics`` in the text exposition format."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "otp_requests",
            "Requests from the engine by topic and outcome",
            ["topic", "outcome"],
            registry=r,
        )
        self.sends = Counter(
            "otp_sends",
            "Notifications handed to a provider, by channel and outcome",
            ["channel", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "otp_dead_letters",
            "Records copied to the DLQ by source topic and why (stub: too large to copy; lost: "
            "not even a stub could be written)",
            ["topic", "reason"],
            registry=r,
        )
        self.fraud_refusals = Counter(
            "otp_fraud_refusals",
            "Generates refused by a fraud control (receiver_limit, country)",
            ["control"],
            registry=r,
        )
        self.validations = Counter(
            "otp_validations", "Validation outcomes", ["outcome"], registry=r
        )
        self.latency = Histogram(
            "otp_processing_seconds",
            "From the request's Kafka timestamp to its reply being sent",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "otp_consumer_lag",
            "Messages not yet committed, per assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.recovering = Gauge(
            "otp_recovery_in_progress", "1 while tables recover from changelogs", registry=r
        )
        self.ready = Gauge(
            "otp_ready", "1 when the worker serves requests (see /ready)", registry=r
        )
        self.templates = Gauge("otp_templates", "Templates in this worker's read model", registry=r)
        self.in_flight = Gauge("otp_in_flight", "Requests being handled right now", registry=r)
        self.otp_rows = Gauge(
            "otp_codes",
            "Identifiers with a row in otps on this worker (counted by the sweep's scan)",
            registry=r,
        )
        self.send_log_rows = Gauge(
            "otp_send_log_receivers", "Receivers with send-log entries on this worker", registry=r
        )
        self.send_log_swept = Counter(
            "otp_send_log_swept", "Send-log entries deleted by the retention sweep", registry=r
        )
        self.events = Counter(
            "otp_delivery_events",
            "Delivery events by type, and whether the broker took them (written, lost)",
            ["type", "outcome"],
            registry=r,
        )

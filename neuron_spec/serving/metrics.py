"""The server's Prometheus metrics: requests by outcome, tokens, latencies, queue and batch
occupancy, drafted and accepted tokens (named after vLLM's where one exists)."""

from __future__ import annotations

from ..engine.generation import Metrics as GenerationMetrics


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "neuron_spec_"
        self.requests = Counter(
            p + "requests", "Completion requests by outcome", ["status"], registry=r
        )
        self.errors = Counter(p + "request_errors", "Failed requests by kind", ["kind"], registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed", registry=r)
        self.tokens = Counter(p + "generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "Time to first token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tpot = Histogram(
            p + "time_per_output_token_seconds",
            "Time per output token",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.drafted = Counter(p + "draft_tokens", "Draft tokens proposed", registry=r)
        self.accepted = Counter(p + "accepted_tokens", "Draft tokens accepted", registry=r)
        self.proposed = Counter(
            p + "proposed_tokens", "Tokens proposed, by method", ["method"], registry=r
        )
        self.kept = Counter(
            p + "accepted_proposals", "Proposed tokens accepted, by method", ["method"], registry=r
        )
        self.pos_drafted = Counter(
            p + "position_drafted", "Drafts proposed at each position", ["position"], registry=r
        )
        self.pos_accepted = Counter(
            p + "position_accepted", "Drafts accepted at each position", ["position"], registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting", registry=r)
        # named after vLLM's vllm:num_requests_waiting / _running, request_queue_time_seconds,
        # e2e_request_latency_seconds
        self.waiting = Gauge(p + "num_requests_waiting", "Requests waiting", registry=r)
        self.running = Gauge(p + "num_requests_running", "Requests being decoded", registry=r)
        latency = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.queue_time = Histogram(
            p + "request_queue_time_seconds",
            "Time a request waited before its decoding began",
            buckets=latency,
            registry=r,
        )
        self.e2e = Histogram(
            p + "e2e_request_latency_seconds",
            "Time from a request's arrival to its last token",
            buckets=latency,
            registry=r,
        )
        self.ready = Gauge(p + "ready", "1 once the models are loaded", registry=r)
        # batch occupancy: rows decoding together now, out of the batch's slots
        self.batch_rows = Gauge(p + "batch_rows", "Rows in the running batch", registry=r)
        self.batch_slots = Gauge(p + "batch_slots", "Slots of the batch", registry=r)

    def observe(self, m: GenerationMetrics, waited_s: float = 0.0) -> None:
        """One prompt's figures; `waited_s` (the time it spent queued) counts towards its
        time to first token, which runs from the request's arrival."""
        self.prompt_tokens.inc(m.prompt_tokens)
        self.tokens.inc(m.new_tokens)
        self.drafted.inc(m.drafted)
        self.accepted.inc(m.accepted)
        self.proposed.labels(m.method).inc(m.drafted)
        self.kept.labels(m.method).inc(m.accepted)
        if m.time_to_first_token_s is not None:
            self.ttft.observe(waited_s + m.time_to_first_token_s)
        if m.time_per_output_token_s["mean"] is not None and m.new_tokens > 1:
            for _ in range(m.new_tokens - 1):
                self.tpot.observe(m.time_per_output_token_s["mean"])
        for i, (d, a) in enumerate(
            zip(m.per_position_drafted, m.per_position_accepted, strict=True), 1
        ):
            self.pos_drafted.labels(str(i)).inc(d)
            self.pos_accepted.labels(str(i)).inc(a)

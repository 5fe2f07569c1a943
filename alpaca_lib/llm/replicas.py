"""Several servers of one model (replicas) behind one client: which one takes the next request, which are down.

    replicas = Replicas([Replica("http://10.0.0.1:8000/v1/", client_a), Replica("http://10.0.0.2:8000/v1/", client_b)])
    replica = replicas.pick()                 # the replica that is up with the fewest requests in flight
    ...                                       # send the request with replica.client
    replicas.release(replica, failure=None)   # or the error (connection, 5xx, timeout) that marks it down

`CompletionClient` (alpaca_lib/llm/client.py) holds one `Replicas`, with one entry when --base_url names one
server, and asks it before every attempt of a request. A replica that fails with an error worth retrying is down
for a while (the client's backoff, doubled with each failure in a row, or the server's Retry-After); a request
that failed there goes to another replica that is up and that it has not tried since it last waited, and waits
(counting one of its retries) only when there is none.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection, Optional, Sequence


@dataclass(eq=False)
class Replica:
    """One server: its address for messages (without a password or query values) and the client that reaches it."""

    url: str
    client: Any
    in_flight: int = 0  # requests sent to it that have not ended
    failures: int = 0  # requests that failed there in a row
    down_until: float = 0.0  # on the `Replicas` clock: until then it takes a request only when no replica is up


class Replicas:
    """The replicas of one client, shared by its threads.

    Args:
        replicas: the servers, in the order given (the first one takes the first request).
        backoff_s: how long a replica is down after one failure, doubled with each failure in a row.
        backoff_max_s: the longest it is down.
        clock: the time in seconds (tests pass their own).
    """

    def __init__(self, replicas: Sequence[Replica], backoff_s: float = 1.0, backoff_max_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        if not replicas:
            raise ValueError("Replicas needs at least one replica")
        self.replicas = list(replicas)
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = 0  # where the round robin among equally busy replicas starts

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, tried: Collection[Replica] = ()) -> Replica:
        """The replica for a request's next attempt, counted in flight until `release`.

        Among the replicas not in `tried` (all of them if every one is), those up come first, and of them the one
        with the fewest requests in flight, the next in turn among equals; with none up, the one back soonest.
        """
        with self._lock:
            now, n = self._clock(), len(self.replicas)
            order = [self.replicas[(self._next + k) % n] for k in range(n)]
            fresh = [r for r in order if r not in tried] or order
            up = [r for r in fresh if r.down_until <= now]
            chosen = min(up, key=lambda r: r.in_flight) if up else min(fresh, key=lambda r: r.down_until)
            self._next = (self.replicas.index(chosen) + 1) % n
            chosen.in_flight += 1
            return chosen

    def release(self, replica: Replica, failure: Optional[BaseException] = None) -> None:
        """Ends an attempt on `replica`: with a `failure` worth retrying elsewhere it is down for a while (at least
        what the failure's Retry-After header asks for, up to `backoff_max_s`); without one it is up."""
        with self._lock:
            replica.in_flight -= 1
            if failure is None:
                replica.failures, replica.down_until = 0, 0.0
                return
            replica.failures += 1
            down_s = min(self.backoff_max_s, self.backoff_s * 2 ** (replica.failures - 1))
            retry_after = server_retry_after(failure)
            if retry_after is not None:
                down_s = min(self.backoff_max_s, max(down_s, retry_after))
            replica.down_until = self._clock() + down_s

    def any_up(self, tried: Collection[Replica] = ()) -> bool:
        """Whether a replica outside `tried` is up: where a failed request can go at once."""
        with self._lock:
            now = self._clock()
            return any(r.down_until <= now for r in self.replicas if r not in tried)


def server_retry_after(exc: Any) -> Optional[float]:
    """The seconds that a failed request's reply asks to wait (its Retry-After header), or None."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None

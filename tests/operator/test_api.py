"""Which Kubernetes API failures a reconcile tick rides out (logs a line and
leaves to the next tick) instead of raising into kopf's 60 s backoff
(tests/kube/test_operator.py restarts a real API server)."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from musicsplit.operator import api


def refused_connection() -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(None, "/apis/musicsplit.io/v1alpha1/namespaces/ml/separationmodels/m",
                                            urllib3.exceptions.NewConnectionError(None, "Connection refused"))


@pytest.mark.parametrize("error, says", [
    (refused_connection(), "did not answer (MaxRetryError"),
    (urllib3.exceptions.ProtocolError("Connection aborted."), "did not answer (ProtocolError"),
    (ApiException(status=503, reason="Service Unavailable"), "could not serve the request (HTTP 503"),
    (ApiException(status=429, reason="Too Many Requests"), "could not serve the request (HTTP 429"),
    (ApiException(status=403, reason="Forbidden"), "HTTP 403 Forbidden): check its ServiceAccount and ClusterRole"),
])
def test_an_absent_busy_or_refusing_server_is_left_to_the_next_tick(error, says):
    assert says in api.retry_later(error)


@pytest.mark.parametrize("error", [ApiException(status=422, reason="Unprocessable Entity"),
                                   ApiException(status=404, reason="Not Found"), KeyError("spec"), ValueError("x")])
def test_a_wrong_request_or_a_bug_still_raises(error):
    assert api.retry_later(error) is None

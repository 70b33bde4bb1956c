"""Kubernetes side of ServeDeck, through the official ``kubernetes`` client.

``kubeconfig`` finds contexts and builds API clients; ``client.KubeClient`` applies plain object
dicts with server-side apply (field manager ``servedeck``), scales and deletes only what we label;
``rollout`` turns watch streams into typed rollout events; ``logs`` follows pod logs and parses vLLM's
periodic stats line (``vllm_log``); ``portforward`` forwards 127.0.0.1 to a pod over the API server's
WebSocket port-forward; ``inventory`` lists vLLM deployments (ours and foreign) as typed rows.
Every failure is a ``KubeError`` with one line that says what to do.
"""

"""What the service says about itself: logs, metrics, request hooks, the loop monitor."""

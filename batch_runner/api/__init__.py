"""fal's HTTP APIs: the client (queue, storage, pricing) and the one place retry policy lives."""

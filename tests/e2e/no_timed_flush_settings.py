"""The example project's settings with a message flush interval longer than any test.

With it, only a scrape or the end of a connection adds a connection's
message counts to the counters, so a test can tell which of them did.
"""

from example_project.settings import *  # noqa: F403

CHANNELS_WS_METRICS = {"MESSAGE_FLUSH_INTERVAL": 3600}

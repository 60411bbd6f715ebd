"""datamanager: interest per subscriber → subscriptions; ticks → bars; bar_snapshot."""

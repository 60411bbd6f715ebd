"""tasktimer: publishes control commands on cron schedules, each instant once."""

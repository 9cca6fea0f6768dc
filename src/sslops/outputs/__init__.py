"""Writing outputs safely (atomic files and folders) and the figures the stages draw; numpy and matplotlib only."""

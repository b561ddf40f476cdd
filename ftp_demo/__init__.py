"""The demo of a whole weekly cycle on the embedded defaults (``ftp-assets demo``), with everything it
simulates: synthetic posts, a seeded audience, a week of the live experiment, and the Monte-Carlo
experiments the statistics are measured on. SIMULATION throughout: none of it describes a real
audience. Installed by the project's ``local`` extra; the production image does not carry it."""

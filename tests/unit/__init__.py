"""Tests of pieces in-process: no server is started; the whole tier runs in well under a minute."""

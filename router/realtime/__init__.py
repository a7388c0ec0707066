"""OpenAI's Realtime transcription protocol over a WebSocket, served by the router.

protocol.py parses the session (GA `session.update` and beta `transcription_session.update`) and
builds server events; audio.py turns the session's input format into 16 kHz float32; vad.py finds
turns with Silero VAD; session.py is one connection's state machine (buffer, turns, items, interim
text); recognizers.py turns an item's audio into text through the family servers.
"""

// Microphone audio to what the Realtime API takes: 24 kHz mono pcm16, in chunks of 50 ms.
// Shared by the AudioWorklet (mic-worklet.js) and the ScriptProcessor fallback in app.js.

export const RATE = 24000;
export const CHUNK_SAMPLES = RATE / 20;

export class Pcm16Resampler {
  // Linear interpolation from `inputRate`, carried across blocks so that a stream cut anywhere
  // resamples as one piece. At 24 kHz in (the page asks the AudioContext for it) it copies.
  constructor(inputRate) {
    this.step = inputRate / RATE;
    this.position = 0; // of the next output sample, in input samples; -1 is `this.last`
    this.last = 0;
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
  }

  // Feed float samples in [-1, 1]; `emit(Int16Array)` is called with each full chunk (a fresh array).
  push(input, emit) {
    const n = input.length;
    if (n === 0) return;
    let position = this.position;
    while (position < n - 1) {
      const i = Math.floor(position);
      const a = i < 0 ? this.last : input[i];
      const value = a + (input[i + 1] - a) * (position - i);
      this.chunk[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(value * 32768)));
      if (this.filled === CHUNK_SAMPLES) {
        emit(this.chunk.slice());
        this.filled = 0;
      }
      position += this.step;
    }
    this.position = position - n;
    this.last = input[n - 1];
  }
}

// The AudioWorklet side of the microphone: 50 ms chunks of 24 kHz pcm16, posted to the page.
import { Pcm16Resampler } from "./pcm.js";

class Pcm16Processor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Pcm16Resampler(sampleRate); // the AudioContext's rate, a global here
  }

  process(inputs) {
    const channel = inputs[0]?.[0]; // the node mixes its input down to mono
    if (channel) this.resampler.push(channel, (chunk) => this.port.postMessage(chunk, [chunk.buffer]));
    return true;
  }
}

registerProcessor("pcm16", Pcm16Processor);

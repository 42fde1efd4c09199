// AudioWorklet processor: the microphone's first channel as 16-bit PCM, posted every ~100 ms.
class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.max(128, Math.round(sampleRate / 10));
    this.buf = new Int16Array(this.block);
    this.n = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        const s = Math.max(-1, Math.min(1, ch[i]));
        this.buf[this.n++] = s < 0 ? s * 32768 : s * 32767;
        if (this.n === this.block) {
          this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
          this.buf = new Int16Array(this.block);
          this.n = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm-capture", PcmCapture);

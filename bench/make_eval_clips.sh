#!/usr/bin/env bash
# Four more synthetic English clips for bench/caption_accuracy.py (not committed: ~107 s of audio, 3.4 MB).
# Needs espeak-ng and sox (Debian: apt-get install espeak-ng sox); the output is deterministic.
# Usage: bash bench/make_eval_clips.sh [DIR]   (default: bench/eval_clips)
set -euo pipefail
out="${1:-$(dirname "$0")/eval_clips}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
say() {  # say VOICE WPM NAME TEXT: 16 kHz mono 16-bit, -3 dBFS peak, 0.15 s silence before, $PAD after
  espeak-ng -v "$1" -s "$2" -w "$tmp/$3.raw.wav" "$4"
  sox -D "$tmp/$3.raw.wav" -r 16000 -c 1 -b 16 "$tmp/$3.wav" norm -3 pad 0.15 "$PAD"
}
clip() {  # clip NAME VOICE WPM SENTENCE...: the sentences back to back
  local name="$1" voice="$2" wpm="$3" parts=() i=0
  shift 3
  for s in "$@"; do i=$((i + 1)); say "$voice" "$wpm" "$name$i" "$s"; parts+=("$tmp/$name$i.wav"); done
  sox "${parts[@]}" "$out/$name.wav"
  printf '%s\t%s\n' "$name.wav" "$*" >> "$tmp/texts.tsv"
}
PAD=0.4 clip us_trip en-us 160 \
  "Last summer we drove along the coast for almost two weeks." \
  "The children collected shells and built castles in the sand." \
  "In the evenings my father cooked fish on a small grill." \
  "One night a storm knocked out the power in the whole village." \
  "We sat by candlelight and told stories until midnight." \
  "The next morning the sky was clear and the sea was calm again." \
  "Before we left, we promised to come back the following year." \
  "My sister still keeps a jar of sand from that beach on her desk."
PAD=0.3 clip f_misc en-us+f3 155 \
  "The doctor asked me to come back in three weeks for another test." \
  "My neighbour grows tomatoes, peppers and beans in her garden." \
  "If it rains tomorrow, the football match will be moved to Sunday." \
  "The new bridge connects the old town with the harbour." \
  "She finished reading the book in a single afternoon." \
  "Please remember to switch off the lights before you go to bed."
PAD=0.3 clip sc_office en-gb-scotland 150 \
  "The company opened a new office in Glasgow last spring." \
  "Most of the staff travel to work by bus or by train." \
  "On Fridays the team has lunch together in the canteen." \
  "The manager wants the report finished by the end of the month." \
  "Nobody expected the meeting to last for four hours." \
  "Next year they plan to hire twenty more engineers."
PAD=0.3 clip en_facts en 165 \
  "Water boils at one hundred degrees at sea level." \
  "The moon takes about twenty seven days to orbit the earth." \
  "Bees visit thousands of flowers to make a small amount of honey." \
  "Mountains are often colder at the top than at the bottom." \
  "The longest river in Africa is the Nile." \
  "A healthy adult sleeps between seven and nine hours a night."
cp "$tmp/texts.tsv" "$out/texts.tsv"
echo "wrote $(ls "$out"/*.wav | wc -l) clips to $out"

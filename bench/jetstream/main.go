// The JetStream side of scripts/bench-offline.sh: COUNT messages of SIZE bytes published
// asynchronously with acks (at most WINDOW unacknowledged) into a file-backed stream of one
// replica, then drained through a durable pull consumer with an explicit ack per message.
// Prints {"publish_msgs_per_s": …, "drain_msgs_per_s": …}.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	url := flag.String("url", nats.DefaultURL, "NATS server")
	count := flag.Int("count", 200000, "messages")
	size := flag.Int("size", 256, "payload bytes")
	window := flag.Int("window", 4096, "publishes awaiting their ack at most")
	batch := flag.Int("batch", 512, "messages per pull")
	flag.Parse()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "jetstream-bench:", err)
		os.Exit(1)
	}

	nc, err := nats.Connect(*url)
	if err != nil {
		fail(err)
	}
	defer nc.Close()
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(*window))
	if err != nil {
		fail(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"},
		Storage: nats.FileStorage, Replicas: 1}); err != nil {
		fail(err)
	}
	payload := make([]byte, *size)

	start := time.Now()
	for i := 0; i < *count; i++ {
		if _, err := js.PublishAsync(fmt.Sprintf("bench.%d", i%16), payload); err != nil {
			fail(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		fail(fmt.Errorf("publish acks did not all come"))
	}
	publish := float64(*count) / time.Since(start).Seconds()

	sub, err := js.PullSubscribe("bench.>", "drain", nats.AckExplicit())
	if err != nil {
		fail(err)
	}
	start = time.Now()
	for received := 0; received < *count; {
		messages, err := sub.Fetch(*batch, nats.MaxWait(5*time.Second))
		if err != nil {
			fail(err)
		}
		for _, m := range messages {
			if err := m.Ack(); err != nil {
				fail(err)
			}
			received++
		}
	}
	if err := nc.Flush(); err != nil { // the last acks reach the server
		fail(err)
	}
	drain := float64(*count) / time.Since(start).Seconds()
	out, _ := json.Marshal(map[string]int{"publish_msgs_per_s": int(publish), "drain_msgs_per_s": int(drain)})
	fmt.Println(string(out))
}

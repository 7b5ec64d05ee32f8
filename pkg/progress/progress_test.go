package progress

import (
	"sync"
	"testing"
)

func TestCounter(t *testing.T) {
	var c Counter
	c.SetTotal(1000)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				c.Add(1)
			}
		}()
	}
	wg.Wait()
	if d, tot := c.Load(); d != 1000 || tot != 1000 {
		t.Fatalf("Load = %d, %d", d, tot)
	}
	c.AddTotal(5)
	if _, tot := c.Load(); tot != 1005 {
		t.Fatalf("total = %d", tot)
	}
	var nilc *Counter
	nilc.Add(1)
	nilc.SetTotal(1)
	if d, tot := nilc.Load(); d != 0 || tot != 0 {
		t.Fatal("nil counter")
	}
}

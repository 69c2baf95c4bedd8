package com.example.shouter;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.ApplicationArguments;
import org.springframework.boot.ApplicationRunner;
import org.springframework.context.annotation.Profile;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.kafka.requestreply.RequestReplyFuture;
import org.springframework.kafka.support.KafkaHeaders;
import org.springframework.stereotype.Component;

/**
 * Sends {@code echo.requests} requests to the echo service at once, waits for
 * every reply and prints one line per request:
 * {@code reply <n> sent=<correlation id, hex> got=<correlation id, hex> body=<reply>}.
 */
@Component
@Profile("client")
class EchoClient implements ApplicationRunner {

    private final ReplyingKafkaTemplate<String, String, String> template;

    private final String topic;

    private final int requests;

    EchoClient(ReplyingKafkaTemplate<String, String, String> template,
            @Value("${echo.topic}") String topic,
            @Value("${echo.requests}") int requests) {
        this.template = template;
        this.topic = topic;
        this.requests = requests;
    }

    @Override
    public void run(ApplicationArguments args) throws Exception {
        if (!this.template.waitForAssignment(Duration.ofSeconds(30))) {
            throw new IllegalStateException("the reply topic's partitions were not assigned within 30 s");
        }
        List<RequestReplyFuture<String, String, String>> calls = new ArrayList<>();
        for (int n = 0; n < this.requests; n++) {
            ProducerRecord<String, String> request =
                    new ProducerRecord<>(this.topic, "{\"n\":" + n + "}");
            request.headers().add("content-type", "application/json".getBytes(StandardCharsets.UTF_8));
            calls.add(this.template.sendAndReceive(request, Duration.ofSeconds(30)));
        }
        for (int n = 0; n < calls.size(); n++) {
            RequestReplyFuture<String, String, String> call = calls.get(n);
            ConsumerRecord<String, String> reply = call.get(30, TimeUnit.SECONDS);
            Headers sent = call.getSendFuture().get().getProducerRecord().headers();
            System.out.printf("reply %d sent=%s got=%s body=%s%n", n,
                    correlation(sent), correlation(reply.headers()), reply.value());
        }
    }

    private static String correlation(Headers headers) {
        Header header = headers.lastHeader(KafkaHeaders.CORRELATION_ID);
        return header == null ? "none" : HexFormat.of().formatHex(header.value());
    }
}
